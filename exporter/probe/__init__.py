"""One round trip: its phases and result, the clock that bounds them, failures as values, the loop."""
