"""Built-in recipes (YAML data); `recipe_path` resolves a name to a file."""
