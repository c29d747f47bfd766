"""Code both the web tier and the workers use: settings, database, schema, imaging."""
