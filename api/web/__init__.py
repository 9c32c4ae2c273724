"""The web dashboard's server-side helpers: cookie sessions and CSRF, form parsing, page data, charts."""
