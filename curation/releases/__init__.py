"""Releases: freezing, the files trainers read, the dataset card, their pages."""
