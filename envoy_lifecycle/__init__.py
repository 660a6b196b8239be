"""What the shipped commands share, owned by none of them."""
