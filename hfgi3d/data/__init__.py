"""What the inversion looks at: the input view and the pseudo views built around it."""
