"""Thin routes: parse, authorise, call the service functions, shape the answer."""
