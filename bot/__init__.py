"""Chat front ends: Telegram and Slack intake, confirmation and notifications."""
