"""xclr trainer."""
