// Lanyard portal: a card session's page. Follows the session through the server's event
// stream (progress bar, announced status, a reload when the page has something new to show),
// and checks a new PIN against the group's rules before the form goes to the server, which
// checks it again. No PIN is kept, logged or sent anywhere but in the form's POST.
(function () {
  "use strict";
  var ENDED = [
    "active", "pending", "finished", "rolled_back", "failed",
    "pin_changed", "unlocked", "pin_wrong", "pin_blocked", "fido_consent"
  ];

  // A Copy button (data-copy names the element whose text it copies) says in its status
  // element (aria-describedby) whether the copy worked.
  function copier(button) {
    button.addEventListener("click", function () {
      var source = document.getElementById(button.getAttribute("data-copy"));
      var said = document.getElementById(button.getAttribute("aria-describedby"));
      if (!source || !navigator.clipboard) {
        if (said) {
          said.textContent = "Copying is not available here: select the PIN and copy it.";
        }
        return;
      }
      navigator.clipboard.writeText(source.textContent).then(function () {
        if (said) {
          said.textContent = "Copied.";
        }
      }, function () {
        if (said) {
          said.textContent = "Copying was refused: select the PIN and copy it.";
        }
      });
    });
  }

  function follow(job) {
    var url = job.getAttribute("data-events");
    var phase = job.getAttribute("data-phase");
    if (!url || !window.EventSource || ENDED.indexOf(phase) >= 0) {
      return;
    }
    var bar = document.getElementById("job-progress");
    var status = document.getElementById("job-status");
    var source = new EventSource(url);
    source.addEventListener("progress", function (e) {
      var p;
      try {
        p = JSON.parse(e.data);
      } catch (err) {
        return;
      }
      if (p.phase !== phase) {
        source.close();
        window.location.reload();
        return;
      }
      if (bar) {
        bar.value = p.percent;
        bar.textContent = p.percent + " %";
      }
      if (status && status.textContent !== p.status) {
        status.textContent = p.status;
      }
    });
    source.addEventListener("error", function () {
      if (source.readyState !== EventSource.CLOSED) {
        return; // the browser reconnects by itself
      }
      // Refused: find out why. A 401 means the portal session ended; the card session goes on.
      var ctl = window.AbortController ? new AbortController() : null;
      fetch(url, { credentials: "same-origin", signal: ctl ? ctl.signal : undefined })
        .then(function (r) {
          if (ctl) {
            ctl.abort();
          }
          if (r.status === 401) {
            var out = document.getElementById("job-signed-out");
            if (out) {
              out.hidden = false;
            }
            if (status) {
              status.textContent = "Your portal session has ended; sign in again to follow the card session.";
            }
          } else {
            window.setTimeout(function () { follow(job); }, 3000);
          }
        })
        .catch(function () {
          window.setTimeout(function () { follow(job); }, 3000);
        });
    });
  }

  // The same rules as the server's (lanyard_core::model::PinRules::check).
  function pinProblem(pin, min, max, trivial) {
    if (pin.length === 0) {
      return "Type your new PIN.";
    }
    if (!/^[0-9]+$/.test(pin)) {
      return "The PIN must contain digits only.";
    }
    if (pin.length < min) {
      return "The PIN must have at least " + min + " digits; it has " + pin.length + ".";
    }
    if (pin.length > max) {
      return "The PIN must have at most " + max + " digits; it has " + pin.length + ".";
    }
    if (trivial) {
      var steps = function (step) {
        for (var i = 1; i < pin.length; i++) {
          if ((Number(pin[i - 1]) + step) % 10 !== Number(pin[i])) {
            return false;
          }
        }
        return true;
      };
      if (steps(0)) {
        return "The PIN must not repeat one digit (like 111111).";
      }
      if (steps(1) || steps(9)) {
        return "The PIN must not be a run of consecutive digits (like 123456 or 654321).";
      }
    }
    return null;
  }

  function checkPins(form) {
    var min = Number(form.getAttribute("data-min"));
    var max = Number(form.getAttribute("data-max"));
    var trivial = form.getAttribute("data-trivial") === "true";
    var current = document.getElementById("current-pin");
    var pin = document.getElementById("new-pin");
    var again = document.getElementById("confirm-pin");
    var out = document.getElementById("pin-check");
    var problem = null;
    var culprit = pin;
    if (current && current.value.length === 0) {
      problem = "Type your current PIN.";
      culprit = current;
    }
    if (!problem) {
      problem = pinProblem(pin.value, min, max, trivial);
    }
    if (!problem && again.value !== pin.value) {
      problem = "The two PINs differ: type the same new PIN in both fields.";
    }
    if (!problem && current && current.value === pin.value) {
      problem = "The new PIN is the same as the current one: choose another.";
    }
    if (current) {
      current.setAttribute("aria-invalid", culprit === current ? "true" : "false");
    }
    pin.setAttribute("aria-invalid", problem && culprit === pin ? "true" : "false");
    form.setAttribute("data-culprit", culprit.id);
    out.textContent = problem || "This PIN meets the rules.";
    out.className = problem ? "hint bad" : "hint good";
    return problem;
  }

  function guard(form) {
    form.addEventListener("input", function () {
      checkPins(form);
    });
    form.addEventListener("submit", function (e) {
      var by = e.submitter;
      if (by && (by.value === "skip" || by.value === "cancel")) {
        return;
      }
      if (checkPins(form)) {
        e.preventDefault();
        document.getElementById(form.getAttribute("data-culprit") || "new-pin").focus();
      }
    });
  }

  // The passkey step of an issuance (the Register a passkey piece from lanyard-passkeys.js):
  // "Not now" puts it away and goes on to the device PIN; once registered, the piece says what
  // follows and the button goes, since the key holds Lanyard's passkey now.
  function passkeyStep(skip) {
    var step = document.getElementById(skip.getAttribute("data-passkey-skip"));
    var next = document.getElementById(skip.getAttribute("data-focus"));
    skip.addEventListener("click", function () {
      if (step) {
        step.hidden = true;
      }
      if (next) {
        next.focus();
      }
    });
    if (!step) {
      return;
    }
    step.addEventListener("lanyard:passkey-registered", function () {
      var out = step.querySelector("[data-passkey-status]");
      var again = step.querySelector("[data-passkey-register]");
      if (out) {
        out.textContent = "Passkey registered. It signs in once the key is active: now choose the device PIN below.";
      }
      skip.textContent = "Go on to the device PIN";
      // The explanations of what registering does, and of Not now, have done their work.
      var before = step.querySelectorAll("[data-passkey-before], [data-passkey-piece] .hint");
      for (var b = 0; b < before.length; b++) {
        before[b].remove();
      }
      if (again) {
        // Removed rather than hidden (the stylesheet styles every button); the focus it had
        // moves to the way on.
        again.remove();
        skip.focus();
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var skips = document.querySelectorAll("button[data-passkey-skip]");
    for (var k = 0; k < skips.length; k++) {
      passkeyStep(skips[k]);
    }
    var job = document.getElementById("job");
    if (job) {
      follow(job);
    }
    var form = document.getElementById("pin-form");
    if (form) {
      guard(form);
    }
    var buttons = document.querySelectorAll("button[data-copy]");
    for (var i = 0; i < buttons.length; i++) {
      copier(buttons[i]);
    }
  });
})();
