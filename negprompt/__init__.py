"""negprompt: see what a negative prompt does to a diffusion model's image."""
