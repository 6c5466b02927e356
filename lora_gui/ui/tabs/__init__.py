"""One module per tab; each ``build_*_tab(ctx)`` lays out its widgets and wires its own events."""
