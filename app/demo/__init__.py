"""The demo prompt set that `rlhf run` creates on first start."""
