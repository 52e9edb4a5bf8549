"""Typed, validated configs: :mod:`mom.config.model` (architecture and presets), :mod:`mom.config.train` (optimiser,
schedule, batch geometry, cadence), on the JSON and override machinery of :mod:`mom.config.base`."""
