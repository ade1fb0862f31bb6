"""skewless: skewless."""
