document.getElementById("status").textContent = "Dashboard under construction";
