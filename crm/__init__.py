"""shop-crm core: settings, database, event contract, ingestion, CLI."""
