"""Every format that crosses a process boundary: events, definitions, lifecycle, SQL."""
