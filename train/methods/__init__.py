"""One module per retrieval method (heads + losses). See each module's docstring for the paper
and equation numbers it implements."""
