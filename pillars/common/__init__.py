"""Pure helpers shared by pillar packages: parsing, metrics, judge prompt helpers, file readers."""
