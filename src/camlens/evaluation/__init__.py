"""Localization and faithfulness evaluation of CAMs."""
