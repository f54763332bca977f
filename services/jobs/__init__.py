"""The jobs service: OpenAI's Files and Batch APIs over any capability of the mesh,
durable in the registry's database and run through the router at low priority."""
