"""Twilio calls, webhooks, the media stream and the live call session."""
