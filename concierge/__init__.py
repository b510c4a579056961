"""Composition root: settings, CLI, the aiohttp app and the dispatcher."""
