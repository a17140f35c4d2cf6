"""Problems: one module per operation, holding its contract; modules defining PROBLEMS register."""
