"""Training recipes: each module owns one loop that reads top to bottom (`rm`: the reward model)."""
