"""The registry API: devices, their twin and commands, fleet health and data, tokens and the audit log."""
