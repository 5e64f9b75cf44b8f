"""The wire contract shared by edge, cloud and simulators: topics, payload models, device profiles.

Edge and cloud both import this package and nothing of each other.
"""

SCHEMA_VERSION = 1
