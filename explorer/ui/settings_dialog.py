"""Settings: the backend spec of each model role (with availability and what to get when
missing, from ``registry.probe``) and the library location. It gets the app's context (task
runner, notifier), not the window; ``saved`` carries the new settings to whoever applies them."""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFrame, QGridLayout, QHBoxLayout,
                               QLabel, QLineEdit, QPushButton, QVBoxLayout)

from ..core.captions.sources import SOURCES
from ..core.config import Settings
from ..core.errors import ExplorerError
from ..core.models.registry import (CAPTIONER, DETECTOR, IMAGE_ENCODER, ROLE_TITLES, ROLES, TEXT_ENCODER, entries, entry_for,
                                     probe)

EXAMPLES = {
    IMAGE_ENCODER: ["effnet-lite0", "open_clip:ViT-B-32@laion2b_s34b_b79k"],
    TEXT_ENCODER: ["minilm", "open_clip:ViT-B-32@laion2b_s34b_b79k"],
    CAPTIONER: ["structured", "hf:Salesforce/blip-image-captioning-base"],
    DETECTOR: ["ssd-mobilenet", "hf-detr:facebook/detr-resnet-50", "hf-owlvit:google/owlvit-base-patch32"],
}


def probe_all(settings: Settings) -> dict[str, tuple[bool, str, str]]:
    """(ready, where, hint or error) for every role; runs in a worker (probes may import packages)."""
    out = {}
    for role in ROLES:
        try:
            entry_for(role, settings.spec(role))
            av = probe(role, settings)
            out[role] = (av.ready, av.where, av.hint)
        except ExplorerError as e:
            out[role] = (False, "", str(e))
        except Exception as e:  # noqa: BLE001 - a broken backend must not break the dialog
            out[role] = (False, "", f"{type(e).__name__}: {e}")
    return out


class SettingsDialog(QDialog):
    saved = Signal(object)  # the new Settings

    def __init__(self, ctx, settings: Settings, parent=None):
        super().__init__(parent)
        self.ctx = ctx
        self.settings = settings
        self.setWindowTitle("Settings")
        self.setMinimumWidth(760)
        self.combos: dict[str, QComboBox] = {}
        self.states: dict[str, QLabel] = {}

        box = QFrame()
        box.setObjectName("Panel")
        grid = QGridLayout(box)
        grid.setContentsMargins(14, 12, 14, 12)
        grid.setVerticalSpacing(6)
        grid.setHorizontalSpacing(12)
        title = QLabel("Models")
        title.setObjectName("Header")
        grid.addWidget(title, 0, 0, 1, 2)
        row = 1
        for role in ROLES:
            combo = QComboBox()
            combo.setEditable(True)
            names = [e.name for e in entries() if role in e.roles]
            for spec in [settings.spec(role)] + EXAMPLES.get(role, []) + names:
                if combo.findText(spec) < 0:
                    combo.addItem(spec)
            combo.setCurrentText(settings.spec(role))
            combo.setMinimumWidth(320)
            combo.currentTextChanged.connect(self._schedule_probe)
            state = QLabel("checking…")
            state.setWordWrap(True)
            state.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            state.setObjectName("SubHeader")
            grid.addWidget(QLabel(f"<b>{ROLE_TITLES[role]}</b>"), row, 0)
            grid.addWidget(combo, row, 1)
            grid.addWidget(state, row + 1, 1)
            self.combos[role], self.states[role] = combo, state
            row += 2
        grid.setColumnStretch(1, 1)

        lib_box = QFrame()
        lib_box.setObjectName("Panel")
        lg = QGridLayout(lib_box)
        lg.setContentsMargins(14, 12, 14, 12)
        lt = QLabel("Library")
        lt.setObjectName("Header")
        self.library_edit = QLineEdit(settings.library)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        hint = QLabel("The folder holding the database, the vector indices and the thumbnail cache.")
        hint.setObjectName("SubHeader")
        lg.addWidget(lt, 0, 0, 1, 3)
        lg.addWidget(QLabel("Location"), 1, 0)
        lg.addWidget(self.library_edit, 1, 1)
        lg.addWidget(browse, 1, 2)
        lg.addWidget(hint, 2, 1, 1, 2)

        src_box = QFrame()
        src_box.setObjectName("Panel")
        sg = QVBoxLayout(src_box)
        sg.setContentsMargins(14, 12, 14, 12)
        st = QLabel("Caption sources")
        st.setObjectName("Header")
        sg.addWidget(st)
        self.source_checks: dict[str, QCheckBox] = {}
        for src in SOURCES:
            if not src.switchable:
                continue
            cb = QCheckBox(src.label)
            cb.setChecked(src.name in settings.caption_sources)
            sg.addWidget(cb)
            self.source_checks[src.name] = cb
        sh = QLabel("Person-written metadata counts as your caption (weight 1); file names and OCR join the generated "
                    "caption and are weighted by agreement. After a change, index again: only captions are re-embedded.")
        sh.setWordWrap(True)
        sh.setObjectName("SubHeader")
        sg.addWidget(sh)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.save)
        buttons.rejected.connect(self.reject)
        recheck = QPushButton("Check again")
        recheck.clicked.connect(self.run_probe)
        self.fetch_button = QPushButton("Download captioner")
        self.fetch_button.setToolTip("Download the captioner named above (hf:ORG/NAME) into models/: only when you press this")
        self.fetch_button.clicked.connect(self.fetch_captioner)
        bottom = QHBoxLayout()
        bottom.addWidget(recheck)
        bottom.addWidget(self.fetch_button)
        bottom.addStretch(1)
        bottom.addWidget(buttons)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(12, 12, 12, 12)
        lay.setSpacing(10)
        lay.addWidget(box)
        lay.addWidget(lib_box)
        lay.addWidget(src_box)
        lay.addLayout(bottom)

        self._probe_timer = QTimer(self)
        self._probe_timer.setSingleShot(True)
        self._probe_timer.setInterval(400)
        self._probe_timer.timeout.connect(self.run_probe)
        self.probed = False
        self.run_probe()

    def current(self) -> Settings:
        values = {role: self.combos[role].currentText().strip() or self.settings.spec(role) for role in ROLES}
        sources = tuple(name for name, cb in self.source_checks.items() if cb.isChecked())
        return replace(self.settings, library=self.library_edit.text().strip() or self.settings.library,
                       caption_sources=sources, **values)

    def _schedule_probe(self, *_):
        for st in self.states.values():
            st.setText("checking…")
        self._probe_timer.start()

    def run_probe(self) -> None:
        s = self.current()
        self.ctx.tasks.start(probe_all, s, on_result=self._on_probe, on_error=self.ctx.notify.error, name="probe")

    def _on_probe(self, res) -> None:
        for role, (ready, where, hint) in res.items():
            lab = self.states[role]
            if ready:
                lab.setText(f"<span style='color:#1A7F37'>● ready</span> &nbsp; weights: {where}")
            else:
                lab.setText(f"<span style='color:#CF222E'>● missing</span> &nbsp; to fix: {hint}")
        self.probed = True
        self.adjustSize()

    def fetch_captioner(self) -> None:
        """Download the captioner spec in the combo box (explorer models fetch), in a worker."""
        from ..core.models.fetch import fetch_model

        spec = self.combos["captioner"].currentText().strip()
        self.fetch_button.setEnabled(False)
        self.states["captioner"].setText(f"downloading {spec}…")

        def done(res):
            self.fetch_button.setEnabled(True)
            self.states["captioner"].setText(f"downloaded {len(res.files)} files to {res.folder} (checksums verified)")
            self.run_probe()

        def failed(msg):
            self.fetch_button.setEnabled(True)
            self.states["captioner"].setText(f"<span style='color:#CF222E'>● download failed</span> &nbsp; {msg}")

        self.window_.tasks.start(fetch_model, spec, on_result=done, on_error=failed, name="fetch")

    def _browse(self) -> None:
        p = QFileDialog.getExistingDirectory(self, "Library folder", self.library_edit.text())
        if p:
            self.library_edit.setText(p)

    def save(self) -> None:
        new = self.current()
        try:
            new.save()
        except OSError as e:
            self.ctx.notify.error(f"cannot save settings: {e}")
            return
        self.saved.emit(new)
        self.accept()
