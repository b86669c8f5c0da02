"""Reviewing: the queue with its holds, labels and proposed edits, ranking DRI replies."""
