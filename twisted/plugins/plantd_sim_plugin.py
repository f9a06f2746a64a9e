from twisted.application.service import ServiceMaker

plantd_sim = ServiceMaker(
    "plantd-sim",
    "daemon.sim.tap",
    "Device simulators for plantd: a raw-port label printer, a SpringCore "
    "badge reader and a PLC (printer | reader | plc | demo).",
    "plantd-sim",
)
