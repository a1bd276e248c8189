"""rlhf-studio trainer: sampling and SFT / reward-model / PPO rounds (imports torch)."""
