"""The conversation: streaming Claude turns, tools and the calendar."""
