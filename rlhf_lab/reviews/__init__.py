"""The reviews task: a real pretrained LM writes short reviews; its prompts and its offline gold reward."""
