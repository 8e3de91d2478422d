"""The `npuflow` command line: one command per stage and tool."""
