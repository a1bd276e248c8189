"""Prompts shared by the benchmarks (sampling and training), so both measure the same inputs."""

PROMPTS = [
    "Write a haiku about autumn leaves.",
    "Explain what a reward model is in two sentences.",
    "Give three tips for staying focused while studying.",
    "What is the capital of Australia?",
    "Summarise the plot of Romeo and Juliet in one paragraph.",
    "Write a Python function that reverses a string.",
    "Why is the sky blue?",
    "Suggest a name for a bakery that sells only croissants.",
    "How do I boil an egg so the yolk stays soft?",
    "Translate 'good morning, how are you?' into French.",
    "List four planets of the solar system.",
    "Write a short, polite email declining a meeting invitation.",
    "What are the benefits of regular exercise?",
    "Describe the colour green to someone who cannot see.",
    "Tell me a fun fact about octopuses.",
    "Explain recursion to a ten-year-old.",
]
