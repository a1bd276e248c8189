"""Business logic. Routes call services; services use models. No HTTP types in here."""
