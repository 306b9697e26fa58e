"""The durable purge log in each tenant's database, and how regions read and acknowledge
it."""
