"""Training: optimizer with frozen-parameter labels, loss, jitted train step."""
