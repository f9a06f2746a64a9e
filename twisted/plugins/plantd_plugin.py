from twisted.application.service import ServiceMaker

plantd = ServiceMaker(
    "plantd",
    "daemon.tap",
    "Connect plant-floor machines over TCP (server, send and reader triggers).",
    "plantd",
)
