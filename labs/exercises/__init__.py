"""Your answers to the labs' exercises. Fill in the stubs, then `make grade LAB=N`."""
