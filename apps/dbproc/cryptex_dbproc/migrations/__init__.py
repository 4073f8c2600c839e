"""Numbered SQL migrations (a package so the .sql files ship as package data)."""
