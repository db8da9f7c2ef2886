"""A scripted LIBERO expert that reads privileged simulator state, and the demonstrations it generates.

    scene        privileged state: poses, collision surfaces, regions, drawers, knobs, the BDDL goal
    geometry     pure: hand orientations, rotation vectors, footprints, surface samples
    controller   target pose -> LIBERO delta action (the OSC controller's measured scales)
    grasps       pure: grasp choice and clearance heights on point clouds (a box model of the gripper)
    motions      `Arm`: closed-loop moves, the gripper, every action sent (noise, limit, success)
    pick_place   pick, place, placement targets of In / On
    articulated  open a drawer, turn a knob, put into a drawer
    plans        pure: BDDL goal -> skill steps
    expert       `solve`: a plan run skill by skill
    diversity    per-demonstration motion styles, seeded
    dart         recovery demonstrations: the commands executed perturbed, kept as labels
    demos        plan without rendering, render the kept plans
    generation   demonstration jobs, staging, summary (used by generate_libero_demos.py)

The approach, the controller scales and the pitfalls come from a reference study
(shared/reference/libero_scripted_expert/NOTES.md).
"""
