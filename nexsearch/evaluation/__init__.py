"""``nexsearch evaluate``'s results: the store (files, summary, winner) and their presentation."""
