"""skewless: bench."""
