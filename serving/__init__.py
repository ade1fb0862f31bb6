"""skewless: serving."""
