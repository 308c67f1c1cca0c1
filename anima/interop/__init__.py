"""Other tools' formats: the A1111 infotext, recipes written by earlier anima versions."""
