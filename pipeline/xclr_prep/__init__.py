"""xclr data preparation."""
