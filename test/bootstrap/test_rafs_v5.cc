// Tests are added here by the module's author.
