"""skewless: flows."""
