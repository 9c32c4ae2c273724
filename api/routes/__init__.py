"""One APIRouter per area; each route parses input, calls a handler or a query, maps the result."""
