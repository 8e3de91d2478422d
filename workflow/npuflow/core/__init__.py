"""The contracts every stage shares: the stage table (paths of every artifact), the typed stage
records, and what a name in the config may be. Below every stage package, so any stage may use them."""
