"""`ntkit` sub-commands: placeholder until filled."""
