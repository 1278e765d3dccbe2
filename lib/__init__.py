"""Shared code of the Carvana pipeline: the numbered scripts orchestrate, the work is here."""
