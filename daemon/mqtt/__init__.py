"""
MQTT: plantd instances joined through a broker (``[broker:NAME]``,
``[publish:NAME]`` actions, ``[subscribe:NAME]`` triggers).
"""
